"""Temporal credit assignment on recurrent models (``trainer.recurrent``): the rules' online
forms (eligibility traces, their learning signals), one module per rule family. The rules'
mechanisms (``trainer.mechanisms``) run them; the tests hold each online form against its
stop-gradient equivalent or a direct recursion."""
