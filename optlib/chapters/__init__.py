"""Chapter drivers: what a notebook calls to build its configurations, write its records and
compose its findings, one module per chapter that needs more than a few calls. Transformations of
a model live in techniques/, runners in backends/, measurement in measurement/."""
