"""Subscriptions and webhooks: trusts subscribe (FHIR R4 Subscription, rest-hook) to the status of
their prescriptions; each change is queued through the outbox and delivered signed, in order."""
