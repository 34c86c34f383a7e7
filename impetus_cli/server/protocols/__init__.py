"""One thin adapter per API dialect: parse its JSON into the runtime's requests, render the
runtime's stream of GenerationChunk in its wire format and its error shape. No model logic."""
