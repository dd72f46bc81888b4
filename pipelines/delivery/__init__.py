"""Delivery: routing rules, alert mails and the daily report."""
