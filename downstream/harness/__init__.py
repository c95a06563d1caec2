"""The comparison: strategies x label budgets x seeds (`compare`), each task trained by one
recipe (`recipe`) through the task interface (`tasks`)."""
