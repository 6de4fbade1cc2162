"""GPU speed helpers the engines share: CUDA graphs (`cuda_graphs`), FP8 weights (`fp8`) and the
compile watcher (`compile_watch`)."""
