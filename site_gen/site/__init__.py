"""The site: page data from the knowledge base, the registry and results/, rendered through the
Jinja2 templates in site_gen/templates/ into docs/generated/ and README.md (build), with charts
(plots) and the paper list as JSON, CSV and BibTeX (exports)."""
