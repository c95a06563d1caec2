"""Numbers a reviewer reads: the metrics (`metrics`), a trained model on the test set
(`evaluate`), and the paired statistics between strategies (`stats`)."""
