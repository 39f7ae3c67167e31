"""The export: the SavedModel's signatures, TF Serving's warm-up, encoding, the REST client."""
