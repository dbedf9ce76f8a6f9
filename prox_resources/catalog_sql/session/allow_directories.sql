-- Of the file system, only directory stays readable (before external access is turned off).
SET allowed_directories = [{directory}]
