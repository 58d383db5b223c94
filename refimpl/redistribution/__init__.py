"""3.4 Redistribution: techniques that reshape the weight/activation distribution before quantizing."""
