"""Wizards collecting the parameters of an operation; nothing runs before Finish."""
