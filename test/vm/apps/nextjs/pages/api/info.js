export default function handler(req, res) {
  res.status(200).json({ node: process.version, env: process.env.NODE_ENV, event: process.env.npm_lifecycle_event });
}
