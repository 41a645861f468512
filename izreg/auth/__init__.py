"""
Accounts, access keys and who may do what.

=================  ===========================================================
module             role
=================  ===========================================================
``keys``           access-key format, generation, hashing, verification (pure)
``policy``         L{Action}, L{Principal}, scopes and L{authorize} (pure)
``ratelimit``      failed-authentication counter per client address (pure)
``tokens``         self-contained HMAC-signed bearer tokens (pure)
``interfaces``     L{IAuthStore}, L{IDeviceStore}: what both backends offer
``store``          accounts and keys in the shared LMDB environment
``devicestore``    device revocations and pull records in LMDB
``pgstore``        the same in PostgreSQL (several nodes), and the shared token key
``tokenkey``       the token signing key in the data directory (one node)
``runners``        C{inline} / C{then}: store reads from the reactor, either backend
``credentials``    reading an ``Authorization`` header (scheme, Basic ``KEY:``, raw key) (pure)
``authenticator``  ``Authorization`` header -> L{Principal}; token endpoint
``bootstrap``      first-start account, key and ``bootstrap.txt``
=================  ===========================================================
"""
