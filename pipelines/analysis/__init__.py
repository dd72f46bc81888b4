"""Analysis stages over stored records: sentiment, aspects, topics, trends and flagging."""
