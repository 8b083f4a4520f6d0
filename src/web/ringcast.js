// ringcast browser client (being written)
export class Ringcast {}
