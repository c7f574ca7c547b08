"""raysvc: a Ray-distributed experiment service for active learning with VLM priors."""

__version__ = "0.1.0"
