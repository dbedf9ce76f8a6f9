-- Make the attached database the current one: queries name its tables unqualified.
USE {database}
