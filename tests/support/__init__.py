"""Helpers the tests share (imported by test modules; no tests here)."""
