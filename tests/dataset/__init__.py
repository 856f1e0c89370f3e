"""Tests of the dataset phase's core."""
