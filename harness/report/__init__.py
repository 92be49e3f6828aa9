"""Reports from records only: tables (Markdown, LaTeX, CSV, HTML) and charts."""
