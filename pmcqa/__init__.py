"""pmcqa: paper-grounded question answering over PubMed Central full texts."""

__version__ = "0.1.0"
