"""Qt item models adapting the library and the engine to views."""
