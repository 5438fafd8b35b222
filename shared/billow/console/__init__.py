"""The operator console: a static web page (no build step) at /console, served by functions/api/lab_routes.py."""
