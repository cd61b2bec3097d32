"""keyhouse as the LiteLLM proxy's key check: a ``custom_auth`` hook.

Set ``general_settings.custom_auth: keyhouse_litellm.user_api_key_auth`` in the proxy's config.
"""

from keyhouse_litellm.auth import REASON_STATUS, REQUIRED_SCOPES, user_api_key_auth

__all__ = ["REASON_STATUS", "REQUIRED_SCOPES", "user_api_key_auth"]
