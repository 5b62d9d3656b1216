"""Delivery to providers: the transactional outbox, the dispatcher worker, retries and breakers."""
