import socket

from izreg.storage.readers import open_file


def test_reader_reads_seeks_and_sends_a_range(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 4)
    assert open_file(str(tmp_path / "missing")) is None
    with open_file(str(path)) as reader:
        reader.seek(10)
        assert reader.read(5) == bytes(range(10, 15))
        left, right = socket.socketpair()
        with left, right:
            assert reader.sendfile(left.fileno(), 300, 20) == 20
            assert right.recv(100) == bytes(range(44, 64))
            assert reader.sendfile(left.fileno(), 1024, 20) == 0  # the end of the file
        assert reader.read(1) == bytes([15])  # sendfile does not move the position
    assert reader.closed
