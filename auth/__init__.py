"""Who is calling: client authentication, access tokens, scopes and tenancy."""
