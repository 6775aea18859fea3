# The Llama trainer (issue 5).
