"""The training loop and what it is made of: batches, meter, evaluation, optimizer,
checkpoints, signals, seeds."""
