"""Tool-using agents for chat models: the code sandbox, tool-call parsing and the tools (issue 18)."""
