"""Run folders and the other trained-artifact formats: the only code that names their files."""
