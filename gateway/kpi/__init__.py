"""Performance figures (KPIs) from the event log: measures, the monthly aggregate, publication, run-out risk."""
