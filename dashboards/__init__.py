"""The dashboards: the live one the API serves (`static/`, its npm assets in `web/`) and Grafana's (`grafana/`)."""
