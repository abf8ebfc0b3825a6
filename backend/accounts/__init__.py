"""Who may do what: users, their roles and personal tokens, the acting identity.

roles.py      the role -> permission table (the one place a permission is granted)
passwords.py  argon2id hashing, verification and rehash-on-login
actor.py      the identity a request acts as, and the bearer tokens that prove it
"""
