"""HTTP routes: thin, they parse, authorise, call a domain service and render."""
