"""Decode, ahead of the GPU: a payload of either era into one typed job (`payload`, `contract`,
`job`, `presets`, `prompt_weights`), references fetched (`fetch`), and the engine's input made
(`decoder`)."""
