"""The model a checkpoint carries: Monet's configuration and modeling code (copied into every edited
checkpoint), loading published and edited checkpoints, tiny checkpoints in the published format."""
