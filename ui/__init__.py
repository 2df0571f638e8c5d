"""Helpers shared by the dashboard's pages (app.py and pages/*.py); see ui/common.py."""
