"""The knowledge base: taxonomy.yaml and papers/ read (load), validated (check, schema), and grown
(importer for awesome lists, add from arXiv, classify for keyword hints). Never imports site_gen.site."""
