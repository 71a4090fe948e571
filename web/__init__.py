"""Web views served by every worker's Faust web server (found by autodiscovery)."""
