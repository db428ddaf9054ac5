"""Anchor runtimes for bench/compile.py: onnxruntime-genai, OpenVINO GenAI and llama.cpp running
the same SmolLM2-135M weights under one timing protocol (protocol.py). See README.md here."""
