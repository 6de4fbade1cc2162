"""What every worker uses: the wire contract, the queue, storage, callbacks and the runtime loop."""
