"""
Accounts, access keys and who may do what.

=================  ===========================================================
module             role
=================  ===========================================================
``keys``           access-key format, generation, hashing, verification (pure)
``policy``         L{Action}, L{Principal}, scopes and L{authorize} (pure)
``ratelimit``      failed-authentication counter per client address (pure)
``tokens``         self-contained HMAC-signed bearer tokens (pure)
``store``          accounts and keys in the shared LMDB environment
``authenticator``  ``Authorization`` header -> L{Principal}; token endpoint
``bootstrap``      first-start account, key and ``bootstrap.txt``
=================  ===========================================================
"""
