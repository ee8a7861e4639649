"""The llama.cpp engine: plan (the key), CMake build into the cache, source, the engine wheel, an installed wheel."""
