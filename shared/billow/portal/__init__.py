"""The consumer portal's web page (static/: HTML, JS, CSS; no build step, no CDN), served at /portal."""
