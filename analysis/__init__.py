"""Reading MLflow into pandas and regenerating the report figures (see issue: analysis)."""
