"""Operations: settings, logging, metrics, the HTTP server, the GPU, failure classification, the
one retry loop, bounded JSON and the one number reader. Everything above may use them; they know
no queue, payload or delivery."""
