"""The end-to-end pipeline: `edgehydra demo` and the report it writes (the last stages of the data flow)."""
