import concurrent.futures, threading, time
import pytest, requests
from tests.e2e.test_pg_node import node, node_config  # noqa
pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

@pytest.mark.parametrize('path', ['/healthz', '/readyz'])
def test_storm(node, path):
    s = requests.Session()
    auth = node.requests_auth
    def lat(n=40):
        out, bad = [], 0
        for _ in range(n):
            t = time.monotonic()
            r = s.get(f"{node.url}/v2/_catalog", auth=auth, timeout=60)
            out.append(time.monotonic() - t)
            bad += r.status_code != 200
        out.sort()
        return out[len(out)//2], out[-2], bad
    print("quiet", lat())
    stop = threading.Event()
    count = [0, 0]
    def storm():
        ss = requests.Session()
        while not stop.is_set():
            r = ss.get(f"{node.url}{path}", timeout=60)
            if r.status_code != 200 and count[1] < 3: print(r.text)
            count[0] += 1; count[1] += r.status_code != 200
    ts = [threading.Thread(target=storm) for _ in range(24)]
    [t.start() for t in ts]
    time.sleep(2)
    t0 = time.monotonic(); c0 = count[0]
    print("storm", lat(), "readyz/s", (count[0]-c0)/(time.monotonic()-t0), "readyz non-200", count[1])
    stop.set(); [t.join() for t in ts]
