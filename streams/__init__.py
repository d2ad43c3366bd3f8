"""NPO stream: streaming continual-alignment monitoring (arXiv 2507.21131)."""
