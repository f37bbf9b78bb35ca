FROM scratch
CMD ["test"]
