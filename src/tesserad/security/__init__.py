"""Who may call what: hashed tokens with roles, and the table of the role each RPC needs.

Pure Python (no grpc): the API layer's auth interceptor (`tesserad.api.auth`) applies it.
"""

from tesserad.security.roles import MissingRoleError, Role, required_roles
from tesserad.security.tokens import (
    Identity,
    TokensFileError,
    TokenTable,
    hash_token,
    new_token,
)

__all__ = [
    "Identity",
    "MissingRoleError",
    "Role",
    "TokenTable",
    "TokensFileError",
    "hash_token",
    "new_token",
    "required_roles",
]
