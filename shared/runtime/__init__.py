"""The runtime, the top of the house: the `Worker` (`worker`), its ready line and stop signal
(`line`), the claimer ahead of the GPU, the batch contexts and the GPU loop's clock (`batching`),
the hand-off behind the GPU, the keeper, the task, and the stage protocol (`stages`)."""
